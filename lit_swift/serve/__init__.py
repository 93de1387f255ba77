"""HTTP serving: `lit-swift deploy` (OpenAI-compatible API) and the shared server plumbing."""
