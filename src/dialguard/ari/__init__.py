"""ARI mode: the Stasis application (`app`) and its thin aiohttp client (`client`)."""
