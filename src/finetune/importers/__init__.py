"""`finetune import`: Telegram, WhatsApp, Discord, Messenger and Instagram chat exports to chat_template
JSONL rows."""
