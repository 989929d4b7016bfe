"""The supervisors' console: `dialguard console`, pages in a browser (docs/console.md).

It reads the central store (every node's records, the rollup counters, the nodes'
cursors) and Redis (the lists in force, the changes it has taken); it writes nothing but
its exports and their audit records. Server-rendered pages (aiohttp and jinja2), a
vendored chart library, no build step.

- `users`: the users file and its argon2 hashes (`dialguard console user add|list|remove`);
- `sessions`: server-side sessions, CSRF tokens, the login rate limit;
- `i18n`: English and French, from Accept-Language or the switch;
- `views`: what a page shows, from query strings and records (pure: no I/O);
- `reader`: the central store's queries, off the event loop;
- `exports`: an export's files and its audit record;
- `app`: the routes, the login and role checks, the security headers;
- `server`: listening until SIGTERM.
"""
