"""Built-in Maestro tools: retrieval, sandboxed Python, calculator, SQL, HTTP, files, MCP."""
