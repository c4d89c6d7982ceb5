"""What the built-in labs share (starting and stopping their servers); never imported by product code."""
