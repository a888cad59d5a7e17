"""Research-side code of the router: data import, training and evaluation (never imported at serving time)."""
