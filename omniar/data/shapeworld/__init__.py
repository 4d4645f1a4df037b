"""ShapeWorld: the built-in multimodal world (issue 3, in progress: scenes, rendering and the scene parser so far)."""

from omniar.data.shapeworld.parse import ParsedObj, parse_image
from omniar.data.shapeworld.render import render
from omniar.data.shapeworld.scene import Obj, Scene, sample_scene

__all__ = ["Obj", "ParsedObj", "Scene", "parse_image", "render", "sample_scene"]
