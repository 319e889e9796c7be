module fixture/classicleak

go 1.21
