"""`finetune serve`: runs behind an OpenAI-compatible API and a web page, one base in memory, many adapters."""
