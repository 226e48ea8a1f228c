"""diffsim"""
