"""Low-level helpers every stage uses: device resolution and atomic file IO (no imports from the stages)."""
