"""Backend implementations. ``reference`` defines every op; the others subclass it."""
