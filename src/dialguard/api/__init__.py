"""The HTTP API (docs/api.md): decisions and live changes for dialers and CRMs that are not
Asterisk, over JSON, behind bearer tokens. app: the server; routes: the endpoints;
schema: reading requests; tokens: the tokens file; idempotency: Idempotency-Key; errors:
the error bodies; openapi.json: the document."""
