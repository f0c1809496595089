"""From a logged event to Celery tasks: routing rules, the dispatcher, task messages, dead letters."""
