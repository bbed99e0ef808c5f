"""What the add-on asks of the engine: the typed request (request.py), one describer per client job
kind (video.py, finalize.py, drafts.py, reference_sheet.py) and the characters block with its
reference checks (characters.py, image_info.py). The step maps -> request of the data flow."""
