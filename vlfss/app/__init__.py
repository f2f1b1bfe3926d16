"""The web app (``vlfss app``, optional extra ``pip install "vlfss[app]"``): paint a support mask, type a class,
see the segmentation.

``state`` holds what all sessions share (one segmenter per model) and what one session keeps (its prepared
class side); ``inputs`` decodes and checks what a browser sends; ``handlers`` are the page's actions as plain
functions (callable and testable without Gradio); ``export`` writes the downloads; ``examples`` makes the
preloaded synthetic examples; ``ui`` lays the page out in Gradio, the only module that imports it.
"""
