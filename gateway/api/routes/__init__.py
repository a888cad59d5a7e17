"""One `APIRouter` per concern: generate (images and /route), admin (the budget), ops (health, metrics), console."""
