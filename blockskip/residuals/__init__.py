"""Where the residuals of skipped spans come from."""
