"""The pruning agent: LangChain tools, pluggable chat models, prompt templates, Chroma memory."""
