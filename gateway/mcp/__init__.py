"""The MCP front for agents: streamable HTTP at ``/mcp`` (web process) and stdio (``manage.py mcp``).

Neither process holds a target credential: statements, EXPLAIN and the table listing go to the gateway over the
signed Redis queue (gateway.rpc), exactly like the HTTP API. ``tables`` is the one module the gateway imports.
"""
