"""Drivers: run a backend over a reference, functional mode and closed loop; nothing is judged here."""
