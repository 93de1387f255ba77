"""Data stages: sources -> rows -> template -> packing -> collate -> DataModules."""
