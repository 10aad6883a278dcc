"""Pure tensor code for ZIP purification: transforms, schedule, the reverse loop, model loading."""
