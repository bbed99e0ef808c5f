"""Where results land: file paths under //viewfinder/ (paths.py), takes on disk (takes.py), strips
on the Video Sequence Editor (vse.py) and the storyboard and animatic exports (exports.py). The
last steps of the data flow: frames -> take -> strip."""
