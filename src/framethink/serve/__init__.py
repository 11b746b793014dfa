"""`framethink serve`: an OpenAI-compatible chat-completions API and a web page for one model (docs/serving.md)."""
