"""The scene as Viewfinder reads it: shots from camera-bound markers, animated settings sampled per
frame, prompt keys and Deforum schedules, the character bible, and the generation size. The
first step of the data flow (scene -> maps -> request -> engine job -> frames -> take -> strip)."""
