"""Where task-hub state lives: the backend interface and its implementations."""
