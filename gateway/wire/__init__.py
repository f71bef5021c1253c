"""The PostgreSQL wire front: client sessions, authentication, the upstream connection, the asyncio server."""
