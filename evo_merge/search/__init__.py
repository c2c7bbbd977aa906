"""The search: genome, ask-and-tell loop over pymoo, campaign store, evaluators."""
