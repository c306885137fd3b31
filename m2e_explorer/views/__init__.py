"""The explorer's views: pure functions of an :class:`~m2e_core.types.Analysis` (no Gradio here).

=====================  ===============================================================
module                 what it draws
=====================  ===============================================================
``timeline``           key and chord timeline: segments, local key, chords, model's chords
``emotion``            valence and arousal over time, segment by segment
``plane``              the valence-arousal plane of a track, and of a batch of tracks
``tags``               the tag decision rules and the ranked tag bars
``text``               summary, selection details, models banner, stage line
``player``             the track player's HTML (one ``<audio>`` in track time)
``chordnames``         chord and key names for people (spelled in their key)
``common``             time formatting, colours, segment spans, the empty figure
=====================  ===============================================================
"""
