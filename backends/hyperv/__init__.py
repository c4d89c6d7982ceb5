"""Hyper-V backend infrastructure: WS-Management endpoint, Hyper-V host model and script builders."""
