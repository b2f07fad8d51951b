"""Where agents reach Atomic Memory through their own framework's conventions.

- :mod:`surfaces.memory`: :class:`~surfaces.memory.Memory`, the one handle the others share
  (remember, recall, read, list sessions, forget);
- :mod:`surfaces.originals`: a framework's own object kept whole inside a message;
- :mod:`surfaces.mcp_server`: ``amem mcp``, an MCP server over stdio or streamable HTTP
  (extra ``atomic-memory[mcp]``, ``docs/mcp.md``);
- :mod:`surfaces.openai_agents`: a session of the OpenAI Agents SDK (extra ``[agents]``,
  ``docs/openai-agents.md``);
- :mod:`surfaces.langchain`: a LangChain chat message history (extra ``[langchain]``,
  ``docs/langchain.md``).

The HTTP API (``amem serve``, ``docs/http-api.md``) stays in :mod:`rehydrator.http`.
"""
