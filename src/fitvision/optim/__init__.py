"""fitvision.optim"""
