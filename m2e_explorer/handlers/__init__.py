"""The explorer's handlers: the Analyze tab (``analysis``), labelling (``labels``), the Batch tab (``batch``)."""
