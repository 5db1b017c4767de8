"""Site-side inference around the shared Predictor: Grad-CAM heatmaps, annotated pictures, model version stamps."""
