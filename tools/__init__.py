"""Function tools the model may call. The skeleton's single-model turn calls none yet; the
cascade (issue 4) brings the first tools and the tests that call them through every tier."""
