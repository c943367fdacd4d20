"""fitvision.models"""
