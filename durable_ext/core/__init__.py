"""Pure orchestration logic: history, replay, tasks, serialization. No I/O here."""
