"""The m2e explorer: the Gradio app's handlers, views and hosting, over :mod:`m2e_core`."""
