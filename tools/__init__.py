"""Built-in Maestro tools. Each module is imported on its own (nothing heavy is loaded here):

- ``tools.python``     — sandboxed, stateful Python (``PythonSandbox``; ``tools.python.tool.PythonSessions``)
- ``tools.calculator`` — exact, eval-free arithmetic (``calculator`` tool, ``safe_eval``)
- ``tools.sql``        — read-only SQL on SQLite / PostgreSQL (``ReadOnlySQL``, ``sql_tool``)
- ``tools.http``       — allow-listed HTTP fetch (``HttpFetcher``, ``http_tool``)
- ``tools.files``      — read/list/search inside a workspace (``Workspace``, ``files_tools``)
- ``tools.mcp``        — MCP servers as tools (``MCPServerConfig``, ``MCPConnection``)
- ``tools.retrieval``  — ingest, hybrid search, citations, grounding (``Retriever``, ...)
"""
