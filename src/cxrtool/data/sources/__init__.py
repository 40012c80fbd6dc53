"""Source adapters: each turns one published dataset layout into manifest studies."""
