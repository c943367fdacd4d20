"""fitvision.train"""
