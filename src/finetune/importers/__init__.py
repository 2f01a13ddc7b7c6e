"""`finetune import`: Telegram and WhatsApp chat exports to chat_template JSONL rows."""
