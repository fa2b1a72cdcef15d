"""What the measurements mean: the pipeline summary, significance over questions and over seeds, the premise."""
