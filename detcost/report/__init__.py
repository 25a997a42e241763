"""Presentation: tables, figures, HTML and Markdown built from results (never re-measures)."""
