"""Blender properties of the add-on: ``scene.viewfinder`` with its shots and prompt keys (scene.py,
which also registers the character bible of characters.py) and the pose overrides on armatures
(pose.py). The add-on's register() registers scene.py and pose.py itself, in that order.

Nothing is imported or registered here: with a register() in this package that registered its
modules, Blender 4.2 crashed on exit (segmentation fault after the last test, measured with
tests/blender under bpy 4.2.23; Blender 5.0 did not).
"""
