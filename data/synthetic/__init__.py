"""The synthetic hashtag world: a YFCC100M-shaped corpus with images whose hashtags name what is in them (docs/synthetic.md)."""
