"""fitvision.report"""
