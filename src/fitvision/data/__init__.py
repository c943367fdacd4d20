"""fitvision.data"""
