"""The pipeline report: one self-contained HTML file (inline CSS and SVG) built from the ledger."""
