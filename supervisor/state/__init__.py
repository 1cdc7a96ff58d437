"""State engine: target state model, planner (pure) and executor (Docker)."""
