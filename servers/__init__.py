"""Protocol adapters: aiohttp server (live stream, job API, try-it page)."""
