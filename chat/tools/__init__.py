"""Tools the model may call, from MCP servers staff register (issue 31).

``config``: the stdio servers' command lines, from the deployment's configuration only.
``urls``: which http(s) server URLs may be reached. ``client``: one MCP session per operation
(list a server's tools, call one tool) through the official ``mcp`` SDK, its failures told apart.
``catalog``: a server's cached tool list in the database, refreshed on demand.
"""
