"""Thin actors: subscribe → decode → call the pure core → publish. One file each."""
